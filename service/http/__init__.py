"""The HTTP edge of the service: uploads, the API key, response schemas and the one error shape."""
