"""What the API and the workers both use: settings, database, blob store, message contract."""
