-- OpenAI credentials whose upstream also serves the Responses API at
-- {base_url}/responses: Responses clients are passed through to it.
alter table credentials add column responses_api boolean not null default false;
alter table credentials add constraint credentials_responses_api_openai
    check (not responses_api or provider = 'openai');
