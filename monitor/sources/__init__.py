"""Platform sources: live streams of posts into the posts topic."""
