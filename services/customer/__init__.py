"""The customer service: one record of every customer, screen pop, Customer 360 (gRPC).

`config` reads the settings (through crmcore.config), `bootstrap` wires the application, its
read models, the bus and the gRPC server, `servicer` translates protobuf ⇄ domain, and
`__main__` runs it: `crm-customer` or `python -m services.customer`.
"""
