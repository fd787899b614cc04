"""multinic main plugin ``aws-ipvlan``: ipvlan on EC2, each pod address a secondary
private IP of the ENI behind its host NIC."""

from __future__ import annotations

from multinic_aws.driver import CNI_TYPE, PLUGIN_TYPE, AwsIpvlanDriver
from multinic_aws.ec2 import Ec2, Ec2Busy, Ec2Error, Ec2Settings

__all__ = [
    "CNI_TYPE",
    "PLUGIN_TYPE",
    "AwsIpvlanDriver",
    "Ec2",
    "Ec2Busy",
    "Ec2Error",
    "Ec2Settings",
]
