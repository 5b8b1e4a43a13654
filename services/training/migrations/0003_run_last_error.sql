-- Why the run's last attempt stopped short when it is to be tried again (a peer restarting
-- or catching up): shown while the run waits, so a slow retry is not a silent one. And how
-- many of its starts ended that way, so that a restart's count of starts cut short leaves
-- them out.
ALTER TABLE runs ADD COLUMN last_error TEXT;
ALTER TABLE runs ADD COLUMN retries BIGINT NOT NULL DEFAULT 0;
