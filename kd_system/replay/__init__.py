"""The shared replay store on Redis: the replay table (a bounded ring of chunks with the rate
limiter inside), the student-weights channel, run metadata, the chunk codec, a private redis-server."""
