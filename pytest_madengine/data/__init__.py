"""madengine's data providers: ``data.json`` (and the context's ``data``) name where each
dataname comes from; the model's ``data`` field lists the datanames it needs. Before the
model runs, the first provider (madengine's order) that can serve each name fetches or mounts
it; a name no provider serves fails the model before it runs."""
