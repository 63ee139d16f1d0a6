"""Joining VMs to an Istio mesh: `vm configure`, the join directory, WorkloadEntry registration."""
