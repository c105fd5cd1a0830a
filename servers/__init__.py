"""fastframe.servers: the select and prefork engines and the services they run."""
