"""One boto3 session for the workshop, and the errors workshops hit, each with what to do.

Every AWS call goes through :meth:`AwsContext.client`. Errors a learner can fix (no credentials, no region,
a missing quota, a resource still being created) become an :class:`AwsSetupError` whose message says the fix.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

PROJECT_TAG = {"Key": "Project", "Value": "realtime-mlops-workshop"}
DEFAULT_PREFIX = "mlops-workshop"
PREFIX_ENV = "MLOPS_AWS_PREFIX"  # so the notebooks' connect(backend, state_dir) can name another prefix
_PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
QUOTA_CODES = {"LimitExceededException", "ResourceLimitExceeded", "ServiceQuotaExceededException",
               "LimitExceeded", "TooManyApplicationsException"}


class AwsSetupError(RuntimeError):
    """Something in the AWS account or this machine's set-up stops the workshop. The message says the fix."""


@dataclass
class AwsContext:
    """Where the workshop runs on AWS: a name prefix (one per learner), a region, optionally a profile."""

    prefix: str = field(default_factory=lambda: os.environ.get(PREFIX_ENV, DEFAULT_PREFIX))
    region: str | None = None
    profile: str | None = None
    clients: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not _PREFIX.match(self.prefix):
            raise AwsSetupError(f"prefix={self.prefix!r}: use 1-24 lower-case letters, digits or '-', starting "
                                "with a letter (it names every resource: S3 bucket names allow no capitals)")

    @cached_property
    def session(self):
        import boto3

        try:
            session = boto3.Session(profile_name=self.profile, region_name=self.region)
        except Exception as error:  # botocore.exceptions.ProfileNotFound
            raise AwsSetupError(f"AWS profile {self.profile!r}: {error}. List profiles with "
                                "`aws configure list-profiles`, or pass profile=None") from None
        if session.region_name is None:
            raise AwsSetupError("no AWS region: pass region='eu-west-1' (or another) to connect('aws', ...), or set "
                                "AWS_DEFAULT_REGION. SageMaker Studio sets it for you.")
        return session

    @property
    def tags(self) -> list[dict]:
        """The tags every resource carries, so clean-up can find them."""
        return [PROJECT_TAG, {"Key": "WorkshopPrefix", "Value": self.prefix}]

    def client(self, service: str):
        if service not in self.clients:
            from botocore.config import Config

            config = Config(retries={"mode": "adaptive", "max_attempts": 8}, user_agent_extra="mlops-workshop")
            self.clients[service] = self.session.client(service, config=config)
        return self.clients[service]

    @cached_property
    def account_id(self) -> str:
        with explained("checking who you are (sts:GetCallerIdentity)"):
            return self.client("sts").get_caller_identity()["Account"]


@contextmanager
def explained(doing: str):
    """Turn the errors a learner can fix into an AwsSetupError that says how; let the rest through."""
    from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError, PartialCredentialsError

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise AwsSetupError(
            f"no AWS credentials while {doing}. In SageMaker Studio the kernel's execution role provides them; "
            "elsewhere run `aws configure` (or `aws sso login --profile NAME` and pass profile='NAME'), "
            "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.") from None
    except NoRegionError:
        raise AwsSetupError(f"no AWS region while {doing}: set AWS_DEFAULT_REGION or pass region=...") from None
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        message = error.response.get("Error", {}).get("Message", "")
        if code in QUOTA_CODES:
            raise AwsSetupError(
                f"a quota stopped {doing}: {code}: {message}. Fresh accounts start with low quotas (SageMaker "
                "endpoint instances often at 0). Ask for an increase in the Service Quotas console "
                "(https://console.aws.amazon.com/servicequotas/), or delete what you no longer use.") from None
        if code in ("ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException"):
            raise AwsSetupError(f"your AWS credentials were refused while {doing} ({code}): refresh them "
                                "(`aws sso login`, or new keys) and run the cell again.") from None
        if code in ("AccessDenied", "AccessDeniedException"):
            raise AwsSetupError(f"access denied while {doing}: {message}. The role you run as needs the "
                                "permissions in README 'Run it on AWS' (administrator access is simplest in a "
                                "workshop account).") from None
        raise
