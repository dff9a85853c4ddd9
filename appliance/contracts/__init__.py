"""What box and station both speak (docs/): formats, wire protocol, audit records."""
