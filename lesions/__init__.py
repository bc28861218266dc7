"""Domain code shared by the gateway and the workers; it never imports torch."""
