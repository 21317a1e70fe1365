-- claudemesh daemon store, version 16: the profile fields a peer sets with `set_profile`
-- and `join_group` (avatar, title, bio, capabilities, the role in each group), one JSON
-- object per cached presence, held to the profile rules on receipt like the rest.
ALTER TABLE presence ADD COLUMN extra TEXT NOT NULL DEFAULT '{}';
