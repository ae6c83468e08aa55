"""The CLI's input checks by concern (paths and folders, case files, flag values, parity-mode
combinations); longcat_convert/precheck.py composes them into one check per command."""
