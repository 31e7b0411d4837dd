"""Build the code the AWS side runs, and upload it: ``python -m helpers aws package``.

- the Lambda zip: the poller and the feature writer, the shared core and the sources, with numpy and httpx
  for Lambda's Linux (boto3 is in the Lambda runtime);
- the Managed Flink zip: ``main.py`` (the job, :mod:`helpers.ingestion.flink_job`), the shared core, and ``lib/``
  with the Kinesis connector jar (the ``jarfile`` of the ``kinesis.analytics.flink.run.options`` group).

Keys carry a content hash (``code/lambda-<sha>.zip``): a changed zip is a changed stack parameter, so
CloudFormation updates the functions and the application, and an unchanged one changes nothing.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from helpers.aws.session import AwsContext, AwsSetupError, explained

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build" / "aws"
CONNECTOR = "flink-sql-connector-aws-kinesis-streams-5.0.0-1.20.jar"  # Kinesis connector 5.x for FLINK-1_20
CONNECTOR_URL = f"https://repo1.maven.org/maven2/org/apache/flink/flink-sql-connector-aws-kinesis-streams/5.0.0-1.20/{CONNECTOR}"
# Pinned when first verified on a machine that reaches Maven Central (this repository's CI cannot); until then
# the download is checked against the SHA-1 Maven Central publishes beside it, and its SHA-256 is printed to pin.
CONNECTOR_SHA256: str | None = None
LAMBDA_WHEELS = ["numpy==2.4.6", "pandas==2.3.3", "httpx==0.28.1"]  # the versions pyproject pins (pandas: the
# deploy and monitoring Lambdas read the feature group as the notebooks do)
LAMBDA_PYTHON = "3.12"
# numpy's and pandas' own test suites: 56 MB of the 160 MB the wheels unpack to, and Lambda allows 250 MB unzipped.
LEFT_OUT_OF_WHEELS = {"__pycache__", "tests"}
LAMBDA_MODULES = ["helpers/__init__.py", "helpers/core", "helpers/ingestion/__init__.py", "helpers/ingestion/poller.py",
                  "helpers/ingestion/sources", "helpers/local/__init__.py", "helpers/local/clock.py",
                  "helpers/feature_store/__init__.py", "helpers/feature_store/interface.py",
                  "helpers/feature_store/writer.py",
                  # the deploy Lambda (approval -> staging -> smoke test) and what it reads
                  "helpers/aws/__init__.py", "helpers/aws/session.py", "helpers/aws/scheduler.py",
                  "helpers/feature_store/queries.py",
                  "helpers/feature_store/aws.py", "helpers/training/__init__.py", "helpers/training/interface.py",
                  "helpers/training/ssm.py", "helpers/registry/__init__.py", "helpers/registry/interface.py",
                  "helpers/registry/aws.py", "helpers/endpoints/__init__.py", "helpers/endpoints/interface.py",
                  "helpers/endpoints/aws.py", "helpers/endpoints/approval.py",
                  # the monitoring Lambdas (forecasts, scoring, retrain)
                  "helpers/monitoring/__init__.py", "helpers/monitoring/interface.py",
                  "helpers/monitoring/aws.py", "helpers/monitoring/scoring.py", "helpers/monitoring/cloudwatch.py",
                  "helpers/monitoring/settings.py"]
FLINK_MODULES = ["helpers/__init__.py", "helpers/core"]
# The model build's processing jobs (helpers.training.sagemaker_jobs): the container has numpy, pandas and boto3.
JOBS_MODULES = ["helpers/__init__.py", "helpers/core", "helpers/aws/__init__.py", "helpers/aws/session.py",
                "helpers/feature_store/__init__.py", "helpers/feature_store/interface.py",
                "helpers/feature_store/queries.py", "helpers/feature_store/aws.py", "helpers/feature_store/writer.py",
                "helpers/training/__init__.py", "helpers/training/interface.py", "helpers/training/build_steps.py",
                "helpers/training/ssm.py", "helpers/training/sagemaker_jobs.py"]


@dataclass(frozen=True)
class CodePackages:
    lambda_key: str
    flink_key: str


def _add(archive: zipfile.ZipFile, source: Path, name: str) -> None:
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))  # fixed: the same code, the same zip and key
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, source.read_bytes())


def _add_tree(archive: zipfile.ZipFile, root: Path, entries: list[str]) -> None:
    for entry in entries:
        path = root / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" not in file.parts:
                _add(archive, file, file.relative_to(root).as_posix())


def build_lambda_zip(out: Path = BUILD) -> Path:
    wheels = out / "lambda-deps"
    if not wheels.exists():
        run = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(wheels),
                              "--platform", "manylinux2014_x86_64", "--python-version", LAMBDA_PYTHON,
                              "--implementation", "cp", "--only-binary=:all:", *LAMBDA_WHEELS],
                             capture_output=True, text=True)
        if run.returncode:
            raise AwsSetupError(f"could not fetch {LAMBDA_WHEELS} for Lambda's Linux from PyPI: {run.stderr[-500:]}")
    path = out / "lambda.zip"
    with zipfile.ZipFile(path, "w") as archive:
        _add_tree(archive, REPO, LAMBDA_MODULES)
        for file in sorted(p for p in wheels.rglob("*") if p.is_file() and not LEFT_OUT_OF_WHEELS & set(p.parts)):
            _add(archive, file, file.relative_to(wheels).as_posix())
    return path


def connector_jar(out: Path = BUILD, url: str = CONNECTOR_URL, expected_sha256: str | None = CONNECTOR_SHA256) -> Path:
    """The Kinesis connector jar, downloaded once and checked; what to do if it cannot be."""
    jar = out / CONNECTOR
    if jar.exists():
        return jar
    out.mkdir(parents=True, exist_ok=True)
    try:
        data = urllib.request.urlopen(url, timeout=60).read()
        if expected_sha256 is None:
            published = urllib.request.urlopen(url + ".sha1", timeout=60).read().decode().split()[0]
    except OSError as error:
        raise AwsSetupError(
            f"could not download the Kinesis connector jar from {url} ({error}). Download it by hand on a machine "
            f"that can, check it, and put it at {jar}; then run the packaging again.") from None
    sha256 = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise AwsSetupError(f"{url}: SHA-256 {sha256}, expected {expected_sha256}: not the pinned jar. "
                            "Nothing was uploaded; check the URL or your proxy.")
    if expected_sha256 is None and hashlib.sha1(data).hexdigest() != published:
        raise AwsSetupError(f"{url}: its SHA-1 differs from the one Maven Central publishes: the download is "
                            "damaged. Nothing was uploaded; run the packaging again.")
    jar.write_bytes(data)
    print(f"{CONNECTOR}: SHA-256 {sha256}")
    return jar


def build_flink_zip(jar: Path, out: Path = BUILD) -> Path:
    path = out / "flink.zip"
    with zipfile.ZipFile(path, "w") as archive:
        _add(archive, REPO / "helpers" / "ingestion" / "flink_job.py", "main.py")
        _add_tree(archive, REPO, FLINK_MODULES)
        _add(archive, jar, f"lib/{CONNECTOR}")
    return path


def build_jobs_zip(out: Path = BUILD) -> Path:
    """helpers.zip for the processing jobs, imported from the zip itself (zipimport): no install in the job."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "helpers.zip"
    with zipfile.ZipFile(path, "w") as archive:
        _add_tree(archive, REPO, JOBS_MODULES)
    return path


def content_key(path: Path, stem: str, folder: str = "code") -> str:
    return f"{folder}/{stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}.zip"


def upload_jobs_bundle(context: AwsContext, bucket: str) -> str:
    """Build and upload the jobs' zip under model-build/ (where the pipeline's role reads); returns its S3 URI.
    The hash names the folder, not the file: a processing job's input keeps the object's own name, which the job
    imports from (``helpers.zip``, :data:`helpers.training.sagemaker_jobs.BUNDLE`)."""
    path = build_jobs_zip()
    key = f"{content_key(path, 'jobs', folder='model-build/code').removesuffix('.zip')}/{path.name}"
    with explained(f"uploading the model build's code to s3://{bucket}/{key}"):
        context.client("s3").upload_file(str(path), bucket, key)
    return f"s3://{bucket}/{key}"


def upload_lambda_zip(context: AwsContext, bucket: str) -> str:
    """Build and upload the Lambda zip alone (the deployment and monitoring stacks need no Flink jar); its key."""
    path = build_lambda_zip()
    key = content_key(path, "lambda")
    with explained(f"uploading the Lambda code to s3://{bucket}/{key}"):
        context.client("s3").upload_file(str(path), bucket, key)
    return key


def package_and_upload(context: AwsContext, bucket: str, jar: Path | None = None) -> CodePackages:
    """Build both zips and upload them to the storage stack's bucket; returns their keys."""
    BUILD.mkdir(parents=True, exist_ok=True)
    lambda_zip = build_lambda_zip()
    flink_zip = build_flink_zip(jar or connector_jar())
    keys = CodePackages(content_key(lambda_zip, "lambda"), content_key(flink_zip, "flink"))
    s3 = context.client("s3")
    with explained(f"uploading the code to s3://{bucket}/code/"):
        for path, key in ((lambda_zip, keys.lambda_key), (flink_zip, keys.flink_key)):
            s3.upload_file(str(path), bucket, key)
    return keys
