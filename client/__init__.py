"""The torchwire Python client: `from torchwire.client import Client`."""

from torchwire.client.client import Client, Job, JobError
from torchwire.client.messages import PredictResult

__all__ = ["Client", "Job", "JobError", "PredictResult"]
