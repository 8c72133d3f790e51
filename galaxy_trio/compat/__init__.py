"""Drop-ins for other systems' APIs, built on galaxy_trio (``compat.ufo``: UFO Galaxy's device manager)."""
