"""Everything that talks to a host: connection, agent, tunnels, GPU facts, providers."""
