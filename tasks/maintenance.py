"""registry.sweep_provisioning, registry.sweep_hibernation, registry.sweep_orphans."""
