from django.contrib.admin.apps import AdminConfig


class ControlRoomAdminConfig(AdminConfig):
    default_site = "controlroom.admin.ControlRoomAdminSite"
