"""Domain decisions shared by the API, the controllers, V2V and DR: plan a VM, check a
migration, make a volume. No HTTP and no QMP here: callers give a ConfigDB (and the watch-fed
inventory where placement needs it), services check, decide and write, and raise the errors
of `services.errors`, which the API maps to HTTP in one place."""
