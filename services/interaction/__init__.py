"""The interaction service: contacts on every channel, cases, SLAs, surveys and VOC (gRPC).

`config` reads the settings (through crmcore.config), `bootstrap` wires the application, its
read models, the SLA scheduler, the bus (relay out, routing decisions in) and the gRPC server,
`servicer` translates protobuf ⇄ domain, and `__main__` runs it: `crm-interaction` or
`python -m services.interaction`.
"""
