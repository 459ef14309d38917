"""The application layer: training jobs, serving, the worker processes and the catalog views,
over the core and the store; it owns validation and typed values, and knows no gRPC."""
