from django.contrib import admin
from django.urls import include, path

from chat import admin as chat_admin
from chat import upload_views, views

urlpatterns = [
    path("", views.index, name="index"),
    path("classic/", views.classic, name="classic"),
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/guest/", views.guest_login, name="guest"),
    path("accounts/login/", views.LoginView.as_view(), name="login"),
    # Before Django's own: these exist only with e-mail configured, and are limited.
    path("accounts/password_reset/", views.PasswordResetView.as_view(), name="password_reset"),
    path(
        "accounts/password_reset/done/",
        views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "accounts/reset/<uidb64>/<token>/",
        views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "accounts/reset/done/",
        views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("accounts/", include("django.contrib.auth.urls")),
    path("uploads/", upload_views.upload, name="upload"),
    path("uploads/<str:upload_id>", upload_views.download, name="upload-file"),
    path("uploads/<str:upload_id>/thumb", upload_views.thumbnail, name="upload-thumb"),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("metrics", views.metrics_export, name="metrics"),
    path("admin/workers/", admin.site.admin_view(chat_admin.workers_view), name="admin-workers"),
    path("admin/", admin.site.urls),
]
