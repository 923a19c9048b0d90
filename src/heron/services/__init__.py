"""Domain decisions shared by the API, the controllers, V2V and DR (plan a VM, check a
migration, make a volume, restore a point): no HTTP, no QMP (DESIGN.md, "Layers")."""
