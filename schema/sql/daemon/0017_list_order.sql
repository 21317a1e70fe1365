-- Lists page by keyset on their sort order (`ipc::page`): these indexes make a page a range
-- read of its own rows instead of a sort of the whole table.
CREATE INDEX tasks_newest ON tasks (mesh, created_at DESC, id);
CREATE INDEX contexts_newest ON contexts (mesh, created_at DESC, id);
CREATE INDEX memories_newest ON memories (mesh, created_at DESC, n DESC);
CREATE INDEX reservations_oldest ON reservations (mesh, created_at, id);
