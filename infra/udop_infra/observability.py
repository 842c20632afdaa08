"""Observability: alarms (failed executions, task-runner errors and throttles) to an encrypted SNS
topic, and one dashboard of the pipelines and functions."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from udop_infra.config import DeploymentConfig
from udop_infra.orchestration import Orchestration
from udop_infra.runtime import Runtime

PERIOD = Duration.minutes(5)


class Observability(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeploymentConfig,
        runtime: Runtime,
        orchestration: Orchestration,
    ) -> None:
        super().__init__(scope, id)
        # CloudWatch alarms may only publish to a topic encrypted with a key whose policy lets
        # cloudwatch.amazonaws.com use it, hence a customer managed key rather than alias/aws/sns
        key = kms.Key(
            self, "AlarmTopicKey", enable_key_rotation=True, description="udop alarm topic encryption"
        )
        key.add_to_resource_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                resources=["*"],
            )
        )
        self.topic = sns.Topic(self, "Alarms", display_name="udop alarms", master_key=key, enforce_ssl=True)
        if config.alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(config.alarm_email))
        action = actions.SnsAction(self.topic)
        self.alarms: dict[str, cloudwatch.Alarm] = {}

        def alarm(name: str, metric: cloudwatch.IMetric, description: str) -> None:
            created = cloudwatch.Alarm(
                self,
                name,
                metric=metric,
                threshold=1,
                evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                alarm_description=description,
            )
            created.add_alarm_action(action)
            self.alarms[name] = created

        task_runner = runtime.task_runner
        alarm(
            "TaskRunnerErrors",
            task_runner.metric_errors(period=PERIOD, statistic="Sum"),
            "udop task runner: invocations ended in an error (tasks are retried; see the pipeline alarms)",
        )
        alarm(
            "TaskRunnerThrottles",
            task_runner.metric_throttles(period=PERIOD, statistic="Sum"),
            "udop task runner: invocations throttled (raise the account's Lambda concurrency)",
        )
        alarm(
            "DeployerErrors",
            runtime.deployer.metric_errors(period=PERIOD, statistic="Sum"),
            "udop deployer: an uploaded definition could not be processed",
        )
        alarm(
            "RunEventsErrors",
            runtime.run_events.metric_errors(period=PERIOD, statistic="Sum"),
            "udop run events: execution status changes were not recorded",
        )
        pipeline_widgets: list[cloudwatch.IWidget] = []
        for name, pipeline in orchestration.pipelines.items():
            machine = pipeline.state_machine
            construct_id = pipeline.node.id
            alarm(
                f"{construct_id}Failed",
                machine.metric_failed(period=PERIOD, statistic="Sum"),
                f"udop pipeline {name}: a run failed",
            )
            alarm(
                f"{construct_id}TimedOut",
                machine.metric_timed_out(period=PERIOD, statistic="Sum"),
                f"udop pipeline {name}: a run timed out",
            )
            pipeline_widgets.append(
                cloudwatch.GraphWidget(
                    title=f"pipeline {name}: runs",
                    width=12,
                    left=[
                        machine.metric_started(period=PERIOD),
                        machine.metric_succeeded(period=PERIOD),
                        machine.metric_failed(period=PERIOD),
                        machine.metric_timed_out(period=PERIOD),
                    ],
                )
            )

        self.dashboard = cloudwatch.Dashboard(self, "Dashboard", default_interval=Duration.days(1))
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="task runner: invocations, errors, throttles",
                width=12,
                left=[
                    task_runner.metric_invocations(period=PERIOD),
                    task_runner.metric_errors(period=PERIOD),
                    task_runner.metric_throttles(period=PERIOD),
                ],
            ),
            cloudwatch.GraphWidget(
                title="task runner: duration (p50, p99)",
                width=12,
                left=[
                    task_runner.metric_duration(period=PERIOD, statistic="p50"),
                    task_runner.metric_duration(period=PERIOD, statistic="p99"),
                ],
            ),
            cloudwatch.GraphWidget(
                title="deployer and run events: errors",
                width=12,
                left=[
                    runtime.deployer.metric_errors(period=PERIOD),
                    runtime.run_events.metric_errors(period=PERIOD),
                ],
            ),
            cloudwatch.AlarmStatusWidget(title="alarms", width=12, alarms=list(self.alarms.values())),
        )
        if pipeline_widgets:
            self.dashboard.add_widgets(*pipeline_widgets)
