"""The dashboard's screens: the main one (main/, a file per panel), renting (offers), full-screen logs, cost,
check and help (details), dialogs (modals)."""
