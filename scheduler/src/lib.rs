//! Pod scheduler, leader-elected through a Lease object, talking only to the API server. Not built yet.
