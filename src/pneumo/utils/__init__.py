"""Small shared helpers with no pneumo dependencies."""
