"""The CDK app of {{NAME}}: the udop platform with this repository's pipelines.

    npx cdk deploy      # synthesizes (building the Lambda layers on the first run) and deploys
    pytest              # synthesizes without building layers and validates every pipeline

Settings are ``UdopPlatformProps`` (VPC and NAT, database size, API auth, alarms' e-mail, ...);
see udop's docs/deployment.md. ``UdopPlatform`` is a CDK stack: add your own stacks to this app.
"""

import sys

import aws_cdk as cdk

from udop_infra.nag import add_checks
from udop_infra.platform import UdopPlatform, UdopPlatformProps, synth_error

#: the CloudFormation stack; `udop deploy` / `udop run --executor stepfunctions` find it by this name
#: (set UDOP_STACK_NAME if you change it)
STACK_NAME = "Udop"


def build(app: cdk.App) -> UdopPlatform:
    return UdopPlatform(
        app,
        STACK_NAME,
        props=UdopPlatformProps(
            pipelines_dir="pipelines",  # every *.yaml there becomes a state machine udop-<name>
            nat_gateways=0,  # 1: tasks may reach the internet (connectors to outside APIs)
            alarm_email=None,  # "data-team@example.com": subscribed to the alarms' topic
        ),
    )


def main() -> int:
    app = cdk.App()
    try:
        build(app)  # builds the Lambda layers (CDK local bundling, cached in ~/.cache/udop)
    except Exception as exc:
        message = synth_error(exc)  # a bad setting, a layer that cannot be built: one line, exit 2
        if message is None:
            raise
        print(f"{{NAME}}: {message}", file=sys.stderr)
        return 2
    add_checks(app)  # cdk-nag AwsSolutions: a finding that is not acknowledged fails the synth
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
