"""The Container Device Interface: spec files that tell a runtime how to hand a device to a container."""
