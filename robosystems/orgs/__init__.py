"""Organizations, members, invitations, limits and usage."""
