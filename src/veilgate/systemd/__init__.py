"""The daemons under a service manager: ``notify`` (readiness, watchdog, status, reload), ``privileges``
(the drop to the daemon's own user) and ``units`` (the unit files shipped as package data, written by
``veilgate install-units``)."""
