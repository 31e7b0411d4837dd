"""The code packages the AWS side runs: what the zips hold, that their handlers import from the zip alone, and
the connector jar's download checks (a local HTTP server stands in for Maven Central, which this machine cannot
reach)."""
import hashlib
import http.server
import subprocess
import sys
import threading
import zipfile

import pytest

from helpers.aws import package
from helpers.aws.session import AwsSetupError


@pytest.fixture
def maven(tmp_path):
    """An HTTP server on loopback serving a jar and its .sha1, as Maven Central does."""
    root = tmp_path / "maven"
    root.mkdir()
    jar = b"PK\x03\x04 a connector jar"
    (root / package.CONNECTOR).write_bytes(jar)
    (root / f"{package.CONNECTOR}.sha1").write_text(hashlib.sha1(jar).hexdigest() + "\n")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/{package.CONNECTOR}", jar, root
    server.shutdown()


def test_the_jar_is_checked_against_maven_s_published_sha1(maven, tmp_path):
    url, jar, _ = maven
    path = package.connector_jar(tmp_path / "out", url=url, expected_sha256=None)
    assert path.read_bytes() == jar


def test_a_damaged_download_or_a_jar_other_than_the_pinned_one_is_refused(maven, tmp_path):
    url, jar, root = maven
    with pytest.raises(AwsSetupError, match="SHA-256 .* expected 0+: not the pinned jar. Nothing was uploaded"):
        package.connector_jar(tmp_path / "a", url=url, expected_sha256="0" * 64)
    (root / f"{package.CONNECTOR}.sha1").write_text("0" * 40)
    with pytest.raises(AwsSetupError, match="SHA-1 differs .* damaged"):
        package.connector_jar(tmp_path / "b", url=url, expected_sha256=None)
    assert not (tmp_path / "a" / package.CONNECTOR).exists() and not (tmp_path / "b" / package.CONNECTOR).exists()
    assert package.connector_jar(tmp_path / "c", url=url, expected_sha256=hashlib.sha256(jar).hexdigest()).exists()


def test_an_unreachable_maven_says_to_download_the_jar_by_hand(tmp_path):
    with pytest.raises(AwsSetupError, match=r"could not download .* Download it by hand .* put it at .*\.jar"):
        package.connector_jar(tmp_path, url="http://127.0.0.1:9/nothing.jar")


def imports_from_zip(archive, modules: list[str]) -> str:
    code = (f"import sys; sys.path.insert(0, {str(archive)!r})\n"
            + "".join(f"import {m}\n" for m in modules)
            + "import helpers; print(helpers.__file__)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_the_flink_zip_holds_the_job_as_main_py_the_core_and_one_connector_jar(tmp_path):
    jar = tmp_path / package.CONNECTOR
    jar.write_bytes(b"jar")
    archive = package.build_flink_zip(jar, tmp_path)
    names = zipfile.ZipFile(archive).namelist()
    assert "main.py" in names and "helpers/core/aggregator.py" in names
    assert [n for n in names if n.startswith("lib/")] == [f"lib/{package.CONNECTOR}"]
    assert not any(n.startswith(("helpers/local", "helpers/ingestion", "helpers/training")) for n in names)
    main = zipfile.ZipFile(archive).read("main.py")
    assert main == (package.REPO / "helpers" / "ingestion" / "flink_job.py").read_bytes()
    assert str(archive) in imports_from_zip(archive, ["helpers.core.aggregator", "helpers.core.events"])
    assert package.content_key(archive, "flink") == package.content_key(package.build_flink_zip(jar, tmp_path), "flink")


def test_the_lambda_zip_s_handlers_import_from_the_zip(tmp_path):
    # numpy, pandas and httpx for Linux come from PyPI; here the venv's stand in, and a wheel's own test suite
    deps = tmp_path / "lambda-deps" / "somewheel"
    (deps / "tests").mkdir(parents=True)
    (deps / "__init__.py").write_text("")
    (deps / "tests" / "test_somewheel.py").write_text("")
    archive = package.build_lambda_zip(tmp_path)
    found = imports_from_zip(archive, ["helpers.ingestion.poller", "helpers.feature_store.writer",
                                       "helpers.ingestion.sources.simulator", "helpers.ingestion.sources.blockchain",
                                       "helpers.ingestion.sources.replay", "helpers.endpoints.aws",
                                       "helpers.monitoring.aws"])
    assert str(archive) in found
    names = zipfile.ZipFile(archive).namelist()
    left_out = ("helpers/training/model_build", "helpers/training/deepar", "helpers/endpoints/serving",
                "helpers/endpoints/deploy", "helpers/feature_store/store", "helpers/local/daemon",
                "helpers/monitoring/monitor")  # the local twin's machinery
    assert not any(n.startswith(left_out) for n in names)
    assert "somewheel/__init__.py" in names and "somewheel/tests/test_somewheel.py" not in names  # 56 MB less


def test_the_studio_install_keeps_the_image_s_torch_and_installs_the_aws_pins():
    import tomllib

    from helpers import studio

    pins = tomllib.loads((package.REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    on_image = studio.plan(pins, installed=lambda name: True)
    bare = studio.plan(pins, installed=lambda name: False)
    assert not any(p.startswith(("torch", "gluonts", "lightning", "mlflow")) for p in bare)
    assert [p for p in on_image if p.startswith(("boto3", "sagemaker"))] == [p for p in pins
                                                                           if p.startswith(("boto3", "sagemaker"))]
    assert not any(p.startswith(("numpy", "pandas")) for p in on_image) and any(p.startswith("pandas") for p in bare)
