"""The dashboard's screens: the main dashboard, provisioning, full-screen logs, cost, check, help, modals."""
