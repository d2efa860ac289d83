"""The shell: I/O around the pure core."""
