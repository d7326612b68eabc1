"""bcat inside other training libraries. Nothing in bcat's core imports this package, so the libraries
it adapts to (TRL: ``pip install 'bcat[trl]'``) stay optional; import a submodule such as
``bcat.integrations.trl`` directly."""
