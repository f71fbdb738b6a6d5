"""The metrics service: KPIs projected from every event on the bus (gRPC and Prometheus).

`config` reads the settings (through crmcore.config), `bootstrap` wires the projection, its
JetStream feed, the gRPC server and the Prometheus endpoint, `servicer` translates protobuf ⇄
crmcore.application.metrics, and `__main__` runs it: `crm-metrics` or `python -m
services.metrics`.
"""
