"""Where the deployed platform is: the CloudFormation stack's outputs, read by stack name.

The CDK app (``infra/``) prints the platform's buckets and ARNs as stack outputs. The CLI reads
them with one ``DescribeStacks`` instead of needing them copied into environment variables; a
variable (``UDOP_DEFINITIONS_BUCKET`` ...) or a command option still wins, and when everything a
command needs is set that way the stack is never read.

Missing AWS configuration (no region, no credentials, no such stack, a missing output) is a
``ConfigError``: one line saying what to set, exit 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import Field

from udop.errors import ConfigError
from udop.settings import AwsResources, UdopSettings, load_settings

__all__ = ["DEFAULT_STACK_NAME", "ENGINE_FIELDS", "OUTPUTS", "Platform", "StackSettings", "aws_errors"]

#: the stack name ``infra/app.py`` uses unless context ``udop:stackName`` says otherwise
DEFAULT_STACK_NAME = "Udop"

#: AwsResources field -> the stack output that holds it (``infra/udop_infra/stack.py``)
OUTPUTS: dict[str, str] = {
    "definitions_bucket": "DefinitionsBucket",
    "data_bucket": "DataBucket",
    "task_runner_arn": "TaskRunnerArn",
    "stream_runner_arn": "StreamRunnerArn",
    "state_machine_role_arn": "StateMachineRoleArn",
    "state_machine_log_group_arn": "StateMachineLogGroupArn",
    # only when the stack has the engine (udop_infra.engines): the same names as the substitutions
    "emr_application_id": "EmrApplicationId",
    "emr_job_role_arn": "EmrJobRoleArn",
    "spark_entry_point": "SparkEntryPoint",
    "athena_workgroup": "AthenaWorkGroup",
    "glue_database": "GlueDatabase",
}
#: the AwsResources fields of the platform's engines; their outputs are named as the substitutions
ENGINE_FIELDS = ("emr_application_id", "emr_job_role_arn", "spark_entry_point", "athena_workgroup",
                 "glue_database")


class StackSettings(UdopSettings):
    """Which deployed stack the CLI reads the platform's resources from."""

    stack_name: str | None = Field(None, description=f"CloudFormation stack of the platform (default "
                                                     f"{DEFAULT_STACK_NAME})")


# botocore reads AWS_DEFAULT_REGION, not AWS_REGION (the Lambda runtime's name)
_REGION_HINT = "set AWS_DEFAULT_REGION (or a region in your AWS profile)"
_CREDENTIALS_HINT = ("set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                     "(`aws configure` writes a profile)")


@contextmanager
def aws_errors() -> Iterator[None]:
    """Turn botocore's configuration errors into one-line ``ConfigError``s (exit 2)."""
    try:
        yield
    except Exception as exc:
        from botocore.exceptions import (
            EndpointConnectionError,
            NoCredentialsError,
            NoRegionError,
            PartialCredentialsError,
            ProfileNotFound,
        )

        if isinstance(exc, NoRegionError):
            raise ConfigError(f"no AWS region configured: {_REGION_HINT}") from None
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            raise ConfigError(f"no AWS credentials found: {_CREDENTIALS_HINT}") from None
        if isinstance(exc, ProfileNotFound):
            raise ConfigError(f"{exc}: set AWS_PROFILE to a profile in ~/.aws/config") from None
        if isinstance(exc, EndpointConnectionError):
            raise ConfigError(f"{exc}: check AWS_DEFAULT_REGION and AWS_ENDPOINT_URL") from None
        raise


class Platform:
    """The platform's resources: an option, else its ``UDOP_*`` variable, else the stack's output.

    The stack is read at most once, and only when a value is not given otherwise.
    """

    def __init__(self, stack: str | None = None, *, cfn: Any = None) -> None:
        self._explicit = stack or load_settings(StackSettings).stack_name
        self.stack_name = self._explicit or DEFAULT_STACK_NAME
        self._cfn = cfn
        self._outputs: dict[str, str] | None = None

    def outputs(self) -> dict[str, str]:
        """The stack's outputs (``OutputKey -> OutputValue``); ``ConfigError`` if it is not there."""
        if self._outputs is None:
            from botocore.exceptions import ClientError

            with aws_errors():
                if self._cfn is None:
                    import boto3

                    self._cfn = boto3.client("cloudformation")
                try:
                    stacks = self._cfn.describe_stacks(StackName=self.stack_name)["Stacks"]
                except ClientError as exc:
                    error = exc.response.get("Error", {})
                    missing = "does not exist" in str(error.get("Message"))
                    if error.get("Code") == "ValidationError" and missing:
                        region = self._cfn.meta.region_name
                        raise ConfigError(
                            f"stack {self.stack_name!r} not found in {region}: deploy it (npx cdk deploy), "
                            "or name the deployed stack with UDOP_STACK_NAME or --stack, or set "
                            "AWS_DEFAULT_REGION to its region") from None
                    raise ConfigError(f"cannot read stack {self.stack_name!r}: {error.get('Code')}: "
                                      f"{error.get('Message')}") from None
            self._outputs = {str(o["OutputKey"]): str(o["OutputValue"])
                             for s in stacks[:1] for o in s.get("Outputs", [])}
        return self._outputs

    def _given(self, field: str, given: str | None) -> str | None:
        value = given or getattr(load_settings(AwsResources), field)
        return str(value) if value else None

    def require(self, field: str, given: str | None = None) -> str:
        """A resource the command cannot do without."""
        value = self._given(field, given)
        if value:
            return value
        outputs = self.outputs()
        if value := outputs.get(OUTPUTS[field]):
            return value
        variable = f"UDOP_{field.upper()}"
        raise ConfigError(f"stack {self.stack_name!r} has no output {OUTPUTS[field]}: set {variable} "
                          f"or pass --{field.replace('_', '-')} (or UDOP_STACK_NAME to the udop stack)")

    def optional(self, field: str, given: str | None = None) -> str | None:
        """A resource the command uses when known. Without a stack named explicitly, a missing
        default stack means "not known" (the command works without it), not an error."""
        value = self._given(field, given)
        if value:
            return value
        try:
            return self.outputs().get(OUTPUTS[field]) or None
        except ConfigError:
            if self._explicit:
                raise
            return None
