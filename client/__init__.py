"""The torchwire Python client: `from torchwire.client import Client`."""

from torchwire.client.client import Client, Job, JobError, PredictResult

__all__ = ["Client", "Job", "JobError", "PredictResult"]
