"""Stand-in for UFO (tests only): module paths, names, fields and values as in UFO's public source."""
