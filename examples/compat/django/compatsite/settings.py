"""The least a Django project needs to answer one view, served by gunicorn
(`gunicorn --preload compatsite.wsgi`: gunicorn takes LISTEN_FDS itself)."""
SECRET_KEY = "compat-suite-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "compatsite.urls"
INSTALLED_APPS = []
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True
