"""Forms of the compliance pages: they parse input; the services validate and change."""

from django import forms

from compliance.contacts import EDITABLE_FIELDS
from compliance.models import ChecklistTemplateItem, Contact, NotificationChannel


class ContactForm(forms.ModelForm):
    class Meta:
        model = Contact
        fields = EDITABLE_FIELDS
        labels = {"response_minutes": "Response-time target (minutes)", "position": "Order"}
        help_texts = {"response_minutes": "The next level is called when this passes without an acknowledgement.",
                      "position": "Order within the level: 1 is listed (and mailed) first."}
        widgets = {"notes": forms.Textarea(attrs={"rows": 3})}


class TickForm(forms.Form):
    note = forms.CharField(max_length=2000, strip=True, widget=forms.Textarea(attrs={"rows": 2}))
    evidence_url = forms.CharField(max_length=500, required=False, strip=True)
    evidence_ref = forms.CharField(max_length=200, required=False)


class TemplateItemForm(forms.ModelForm):
    class Meta:
        model = ChecklistTemplateItem
        fields = ("title", "description", "position", "active", "requires_evidence", "evidence_hint")
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}


class TemplateItemAddForm(forms.ModelForm):
    class Meta:
        model = ChecklistTemplateItem
        fields = ("code", "title", "kind", "description", "requires_evidence", "evidence_hint")
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}

    def __init__(self, *args, kinds=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["kind"].choices = [(k.value, k.label) for k in kinds]

    def validate_unique(self):
        # The service checks the code (and reports a duplicate); the template is not on the form.
        pass


class ChannelForm(forms.Form):
    """A new notification channel: for one contact or one roster level; the URL only by secret reference."""

    kind = forms.ChoiceField(choices=NotificationChannel.Kind.choices)
    contact = forms.ModelChoiceField(queryset=Contact.objects.filter(active=True), required=False)
    level = forms.ChoiceField(choices=[("", "—"), *Contact.Level.choices], required=False)
    label = forms.CharField(max_length=100, required=False, strip=True)
    address = forms.EmailField(required=False, help_text="Email channels only.")
    url_ref = forms.CharField(max_length=300, required=False, strip=True, label="URL reference",
                              help_text="env:DRPANEL_SECRET_… or file:/… naming the channel's apprise URL in the "
                                        "deployment; the URL itself is never entered here.")
    events = forms.MultipleChoiceField(choices=[], required=False, widget=forms.CheckboxSelectMultiple,
                                       help_text="None ticked: every event.")

    def __init__(self, *args, **kwargs):
        from compliance.notifications import EVENTS

        super().__init__(*args, **kwargs)
        self.fields["events"].choices = [(name, name) for name in EVENTS]
