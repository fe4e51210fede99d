"""The face model as a plain library: no Celery, no database, no settings object.

decode -> detect -> landmarks -> align -> embed, for a batch of images at once.
"""
