"""The baseline of bench/plan.py: 200 plain resources on one explicit provider, through the same harness.

It measures what the Pulumi runtime and the mocks cost per resource, with none of the program's logic.
"""

import pulumi
import pulumi_aws as aws

provider = aws.Provider("baseline", region="us-east-1")
for i in range(200):
    aws.cloudwatch.LogGroup(f"baseline-{i}", name=f"/baseline/{i}", opts=pulumi.ResourceOptions(provider=provider))
