"""The staff web app: server-rendered pages above the domain rooms (timeline/, projections/)."""
