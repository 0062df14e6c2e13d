"""Run configurations: each file's ``get_config()`` returns a complete ``ConfigDict``."""
