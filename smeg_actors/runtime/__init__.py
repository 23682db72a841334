"""The runtime: settings, the composition root, start-up checks, logging and the process group."""
