-- Why the run's last attempt stopped short when it is to be tried again (a peer restarting
-- or catching up): shown while the run waits, so a slow retry is not a silent one.
ALTER TABLE runs ADD COLUMN last_error TEXT;
