"""The pure logic both backends share: no SQLite, no HTTP, no boto3, no server (tests/test_architecture.py).

The local twin, the AWS twin, and later the Flink job, the Lambdas and the processing scripts call the same rules.
"""
