"""Routing service entrypoint (gRPC): skill-based routing of work to agents (issue 6).

`config` (settings from the environment via crmcore.config), `bootstrap` (the composition
root: the routing application, the gRPC server, the clock loop driving time-outs and widening,
the bus relay and the consumer of `crm.interaction.>`), `servicer` (protobuf ⇄ domain) and
`__main__` (`crm-routing`, `python -m services.routing`). No routing rule lives here.
"""
