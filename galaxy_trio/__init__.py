"""galaxy_trio: device-fleet registration and control on trio."""
