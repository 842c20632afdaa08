"""cdk-nag AwsSolutions checks and the findings udop accepts, each with its reason."""

from __future__ import annotations

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct


def add_checks(app: cdk.App) -> None:
    """cdk-nag 3 style: a validation plugin (the v2 ``Aspects`` style crashes with cdk-nag 3)."""
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=rule, reason=reason))


def acknowledge_findings(stack: cdk.Stack) -> None:
    """Reasoned acknowledgements, scoped to the constructs they concern."""
